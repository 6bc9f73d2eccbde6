// GLTR's rank buckets (Gehrmann et al., 2019), named as /v1/score's detection.gltr names them.

export const BUCKETS = [
  {id: "top_10", label: "top 10", low: 1, high: 10},
  {id: "top_100", label: "top 100", low: 11, high: 100},
  {id: "top_1000", label: "top 1000", low: 101, high: 1000},
  {id: "rest", label: "beyond 1000", low: 1001, high: Infinity},
];

/** The bucket of a 1-based rank; null for a token that was not scored. */
export function bucketOf(rank) {
  return rank == null ? null : BUCKETS.find((bucket) => rank <= bucket.high);
}
