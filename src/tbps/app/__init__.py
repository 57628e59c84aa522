"""The application layer: turns a validated Hydra config into typed library calls (one module
per verb). The library (model, data, losses, evaluation, training builders) never imports it."""
