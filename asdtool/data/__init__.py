"""Audio and datasets: reading clips, the DCASE layouts of every year, and the HDF5 stores.

`audio` decodes and bounds recordings, `dcase` parses file names and scans a dataset, `layouts`
reads each year's folder layout, `hidden` the organisers' ground truth, `store` the embedding and
score stores that pass between stages. `synth/` writes the embedded synthetic data: the dev set
(`dev`), every year's layout of it (`layouts`) and the pre-training corpus (`corpus`).
"""
