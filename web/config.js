// Where the page finds the API. Empty: the origin the page is served from (the local cloud
// serves both). scripts/build_web.py writes a copy naming the deployed API, e.g.
// window.AUTORETRAIN_API = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod";
window.AUTORETRAIN_API = window.AUTORETRAIN_API || "";
