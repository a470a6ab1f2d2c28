"""Prepared data: validation rules, tokenisation into Parquet splits, training examples."""
