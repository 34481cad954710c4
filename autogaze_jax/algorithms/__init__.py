"""Training algorithms: one pure, jitted `train_step(state, batch, rng) -> (state, metrics)` each."""
