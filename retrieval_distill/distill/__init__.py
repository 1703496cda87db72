"""Students: distillation losses (one nn.Module each, with its citation), data and training."""
