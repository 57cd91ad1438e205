"""Files on disk: finding and decoding images (:mod:`.images`), labelled folders (:mod:`.folders`),
atomic writes and digests (:mod:`.files`)."""
