"""Pure game logic (no torch): prompts, chain-of-thought format, rewards, outcomes, play."""
