"""Optimization: ZClip gradient clipping, learning-rate schedules, the AdamW chain and the weight EMA."""
