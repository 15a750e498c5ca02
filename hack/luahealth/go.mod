module github.com/diffusion-serving/diffusion-operator/hack/luahealth

go 1.22

require github.com/yuin/gopher-lua v1.1.1
