"""selfredteam: online self-play RL red-teaming (Self-RedTeam).

One model plays a red-team attacker and a defender; a safety judge labels each game; both
roles learn with RL. The data path reads: seeds -> game -> judge -> rewards -> learner ->
checkpoint -> eval. See README.md and docs in the repository.
"""

__version__ = "0.1.0"
