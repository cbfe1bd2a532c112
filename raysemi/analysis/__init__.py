"""Looking at results: sweep and run reports, calibration, Grad-CAM and side-by-side predictions.

Never imports ray; plots go through matplotlib's non-interactive Agg backend.
"""
