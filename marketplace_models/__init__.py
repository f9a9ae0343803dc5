"""What inference needs, and nothing else: every logged model carries this package whole.

The image normalisation (:mod:`.imaging`), the network and its evaluation preset
(:mod:`.network`), the image, text and photo + text classifiers as MLflow pyfuncs
(:mod:`.image`, :mod:`.text`, :mod:`.listing`), their ONNX export (:mod:`.onnx`), how they are
logged (:mod:`.pyfunc`) and the sklearn image features (:mod:`.sklearn_features`). It imports
no other package of this project. Nothing here runs at import time.
"""
