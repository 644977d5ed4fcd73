"""envs/: the world. Gymnasium adapters (tools from action spaces, observation text), built-in game envs, real-time stepping, the game-engine bridge, scripted experts."""
