package tiered_test

import "github.com/modproxy/modproxy/cache/internal/grant"

func grantWrite() grant.Write { return grant.Write{} }
