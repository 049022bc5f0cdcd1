"""One module per pipeline, each with the same verbs: load_data, build_model,
train_and_evaluate, predict (and evaluate). Experiments are thin launchers over these."""
