"""What emdcli does with matched images: classify (:mod:`.classify`), evaluate on episodes
(:mod:`.evaluate`, :mod:`.episodes`, :mod:`.fewshot`), search (:mod:`.search`), anomaly
detection (:mod:`.anomaly`) and pictures of a match (:mod:`.explain`)."""
