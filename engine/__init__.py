"""Runtime: images, losses and targets, gradient steps, optimisers, the run loop."""
