"""Wire types only (a leaf of serve): the decision API and KServe v2 messages."""
