"""The codec LM: vocabulary and sequence layout, AR model (HF causal LM), NAR model."""
