"""Data augmentation ops: pure functions over tensors, seeded statelessly."""
