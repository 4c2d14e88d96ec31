"""Offline corpus and tokenizer. See corpus.py (sources), tokenizer.py, build.py, dataset.py."""
from utils.data.dataset import analysis_tokens, batches, load_corpus_tokens
from utils.data.tokenizer import END_OF_TEXT, load_tokenizer

__all__ = ["END_OF_TEXT", "load_tokenizer", "load_corpus_tokens", "analysis_tokens", "batches"]
