"""From clips to anomaly scores (`asdtool embed`, `detect`, `baseline`, `ensemble`).

`embed` turns clips into embeddings with a fine-tuned or frozen model, `knn` is the AITHU detector
(SMOTE over the target domain, 1-NN cosine distance, domain normalisation), `baseline` the log-mel
and autoencoder references, `ensemble` the z-normalised linear fusion and its grid search, and
`scorefolder` the score folder all of them write.
"""
