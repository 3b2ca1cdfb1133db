"""The marketplace's pages (server-rendered, with small JS modules in market/static/market/): sign up and in, the
market dashboard, the buyer console and the account page. The provider console is the provider tab
(worker_web). Every figure a page shows comes from the selectors the REST API uses."""
