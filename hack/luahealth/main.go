// luahealth runs an Argo CD health-check Lua script on one object, with gopher-lua (the Lua
// interpreter Argo CD embeds), and prints the resulting health as JSON.
//
//	luahealth SCRIPT.lua < object.json   ->   {"status":"Healthy","message":"..."}
//
// Used by tests/unit/test_chart.py to test charts/diffusion-operator/files/argocd-health.lua.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func toLua(L *lua.LState, v interface{}) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []interface{}:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case map[string]interface{}:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	}
	return lua.LNil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: luahealth SCRIPT.lua < object.json")
		os.Exit(2)
	}
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	var obj interface{}
	if err := json.Unmarshal(data, &obj); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(script)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ret := L.Get(-1)
	t, ok := ret.(*lua.LTable)
	if !ok {
		fmt.Fprintln(os.Stderr, "script did not return a table")
		os.Exit(1)
	}
	out := map[string]string{
		"status":  t.RawGetString("status").String(),
		"message": t.RawGetString("message").String(),
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
