"""Evaluation and reporting: gaze ratio at a reconstruction loss, gaze pictures, metric writers."""
