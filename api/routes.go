package api

import "github.com/engram-hs/engram/projections"

// routes mounts every endpoint group.
func (s *Server) routes() {
	s.discoveryRoutes()
	s.accountRoutes()
	s.roomRoutes()
	s.userdataRoutes()
	s.syncRoutes()
	s.directoryRoutes()
	s.pushRuleRoutes()
	s.tagRoutes()
	s.publicRoomsRoutes()
	s.userDirectoryRoutes()
	s.voipRoutes()
	s.reportRoutes()
	s.timestampRoutes()
	s.upgradeRoutes()
	s.adminRoutes()
	s.keyRoutes()
	s.searchRoutes()
	s.openIDRoutes()
	s.relationRoutes()
	s.mutualRoomsRoutes()
	s.appserviceRoutes()
}

// syncHandles are the projections /sync reads from.
func (s *Server) syncHandles() []*projections.Handle {
	return []*projections.Handle{s.roomsH, s.userdataH, s.accountsH, s.relationsH, s.keys.Handle()}
}
