"""PCam data: HDF5 reading, synthetic PCam, JPEG conversion, manifests, exploration."""
