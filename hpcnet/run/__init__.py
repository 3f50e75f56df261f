"""Run support: metrics and results files, progress lines."""
