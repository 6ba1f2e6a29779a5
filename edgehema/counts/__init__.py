"""Classes -> a sample's result: ``counting`` (events, cells, retic %, concentrations), ``plausibility``
(the sample-level checks behind the flags), ``result`` (SampleResult and its JSON form),
``scattergram`` (the sample's pictures).
"""
