"""The report (report environment: pandas, matplotlib, SciPy): rows -> tables, verdicts, plots, the README's and the
docs' generated blocks."""
