"""What inference needs, and nothing else: every logged model carries this package whole.

The image normalisation (:mod:`.imaging`), the network and its evaluation preset
(:mod:`.network`), the image, text and photo + text classifiers as MLflow pyfuncs
(:mod:`.image`, :mod:`.text`, :mod:`.listing`), their ONNX export (:mod:`.onnx`), how they are
logged (:mod:`.pyfunc`) and the sklearn image features (:mod:`.sklearn_features`). What the
service reads of a logged version needs no torch: the classifier's config (:mod:`.config`),
its files (:mod:`.logged`) and a listing model's text half and head (:mod:`.fusion`); only
:mod:`.network`, :mod:`.image` and :mod:`.listing` import torch. It imports no other
package of this project. Nothing here runs at import time.
"""
