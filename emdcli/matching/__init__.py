"""DeepEMD matching: node sets and exact EMD (:mod:`.nodes`, :mod:`.transport`), SimpleShot global
features (:mod:`.simpleshot`), the SFC layer (:mod:`.sfc`), and class node sets with the scoring
that classify and evaluate share (:mod:`.support`). Pure numpy: nothing here reads files."""
