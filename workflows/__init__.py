"""Entry scripts: dataset generation and import, training, population-based tuning and batch inference."""
