"""Training recipes (Python side); their YAML configs live in the top-level recipes/ folder."""
