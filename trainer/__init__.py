"""Learning path: datasets, training methods, evaluation."""
