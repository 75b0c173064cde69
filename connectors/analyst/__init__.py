"""The analysts' command line (`tickstock-analyst`) and its pure parts: a DataFrame to a file (export.py)
or to a candlestick chart (chart.py), which know nothing of SQL; cli.py composes them with
connectors/postgres/analyst.py."""
