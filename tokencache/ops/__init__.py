"""Op libraries: the tensor functions variant graphs call (token scores, top-K, gather/scatter,
k-means). Passes insert them as call_function nodes; they hold no graph-rewriting code."""
