// Package grant holds the capability to write artifacts into a store.
//
// cache.Store's artifact writes take a Write value. Go's internal-package
// rule lets only packages under cache/ import this package, so only they can
// name the type and so call those writes: everything else enters the store
// through cache/gate, which checks and verifies it first.
package grant

// Write is the capability to write artifacts into a store. Its zero value
// is the capability; what protects it is who can name the type.
type Write struct{ _ [0]func() }
