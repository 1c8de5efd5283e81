"""Training the policy: rewards, metrics, trajectories to training rows, SFT and evaluation (SPEC §2c-§5).

Imports `graph`, `tools` and `prompts`, never the other way round; TRL, peft and accelerate (the `train` extra) load
only inside the functions that train.
"""
