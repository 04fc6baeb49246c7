"""The model: the algorithm's ResNets (:mod:`.resnet`), the image preprocessing training and
prediction share (:mod:`.preprocess`), and the ``model.tar.gz`` archive (:mod:`.archive`)."""
