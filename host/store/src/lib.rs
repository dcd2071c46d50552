//! Storage for DP3: master records, raw datapoints, snapshots and metadata.
