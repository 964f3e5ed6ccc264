package federation

// queryRoutes registers the query endpoints (profile, directory, public
// rooms, OpenID userinfo).
func (s *Server) queryRoutes() {}
