package resolve

// defaultAuthCheck is the authorisation check Resolve uses. It stays nil
// until the stateres/auth package is wired in.
var defaultAuthCheck AuthCheck
