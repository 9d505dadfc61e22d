"""Stage three: metrics, reports, plots, prediction."""
