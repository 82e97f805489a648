"""The two models: the BERT two-tower scorer (with its backbones) and the SASRec baseline."""
