"""Online RL: advantage maths, log-probs, the learner, checkpoints and the training loop."""
