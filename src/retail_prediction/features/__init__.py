"""THE featurization, shared by training and serving: the line table, the learned tables and the compiled
loops (served); fitting the tables and the latent classes (`fitting`, `latent_fit`: training side)."""
