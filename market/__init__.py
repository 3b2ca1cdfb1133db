"""Models, shards, providers, capacity, bids, jobs and auction rounds; the auction and the job orchestrator."""
