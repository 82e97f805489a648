"""The words: instructions written from the data, and requests read back into constraints."""
