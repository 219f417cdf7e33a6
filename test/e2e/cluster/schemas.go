package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// KubeconformSchemaLocation is the -schema-location template to pass to kubeconform
// (with the directory given to WriteKubeconformSchemas in front, joined by "/").
// Add -strict to use the strict variants.
const KubeconformSchemaLocation = "{{ .ResourceKind }}{{ .KindSuffix }}{{ .StrictSuffix }}.json"

// WriteKubeconformSchemas writes JSON schemas for every kind the API server serves,
// CRDs included, so kubeconform can validate offline:
//
//	kubeconform -strict -schema-location "$dir/"KubeconformSchemaLocation manifests.yaml
//
// It fetches /openapi/v2 and converts it the way kubeconform's usual schema generator
// does: int-or-string becomes string|integer, every field may be null, and the strict
// variant forbids unknown fields. Each kind's file only $refs into a shared
// _definitions[-strict].json, which keeps the recursive CRD schema types finite.
func (c *Cluster) WriteKubeconformSchemas(ctx context.Context, dir string) error {
	raw, err := c.Client.Discovery().RESTClient().Get().AbsPath("/openapi/v2").
		SetHeader("Accept", "application/json").Do(ctx).Raw()
	if err != nil {
		return fmt.Errorf("get /openapi/v2: %w", err)
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("decode /openapi/v2: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create schema directory: %w", err)
	}
	for _, strict := range []bool{false, true} {
		if err := writeSchemaVariant(dir, doc.Definitions, strict); err != nil {
			return err
		}
	}
	return nil
}

func writeSchemaVariant(dir string, defs map[string]map[string]any, strict bool) error {
	suffix := ""
	if strict {
		suffix = "-strict"
	}
	converted := make(map[string]any, len(defs))
	for name, def := range defs {
		converted[name] = toJSONSchema(deepCopy(def), strict)
	}
	defsFile := "_definitions" + suffix + ".json"
	if err := writeJSON(filepath.Join(dir, defsFile), map[string]any{"definitions": converted}); err != nil {
		return err
	}
	names := make([]string, 0, len(defs))
	for name := range defs {
		names = append(names, name)
	}
	sort.Strings(names) // deterministic winner when two groups share a kubeconform file name
	for _, name := range names {
		ref := map[string]any{"$ref": defsFile + "#/definitions/" + name}
		for _, file := range kindFiles(defs[name]) {
			if err := writeJSON(filepath.Join(dir, file+suffix+".json"), ref); err != nil {
				return err
			}
		}
	}
	return nil
}

// kindFiles returns kubeconform's file stem ({{ .ResourceKind }}{{ .KindSuffix }})
// for each group/version/kind a definition is served as.
func kindFiles(def map[string]any) []string {
	gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
	var files []string
	for _, g := range gvks {
		gvk, _ := g.(map[string]any)
		group, _ := gvk["group"].(string)
		version, _ := gvk["version"].(string)
		kind, _ := gvk["kind"].(string)
		if kind == "" || version == "" {
			continue
		}
		// Same rule as kubeconform: "-<first DNS label of group>-<version>".
		suffix := "-" + strings.ToLower(version)
		if group != "" {
			suffix = "-" + strings.ToLower(strings.Split(group, ".")[0]) + suffix
		}
		files = append(files, strings.ToLower(kind)+suffix)
	}
	return files
}

// toJSONSchema rewrites one OpenAPI v2 schema node (and its children) in place.
func toJSONSchema(node map[string]any, strict bool) map[string]any {
	if node["format"] == "int-or-string" {
		return map[string]any{"oneOf": []any{
			map[string]any{"type": []any{"string", "null"}},
			map[string]any{"type": "integer"},
		}}
	}
	for key, value := range node {
		switch key {
		case "properties", "definitions", "patternProperties":
			if children, ok := value.(map[string]any); ok {
				for name, child := range children {
					if m, ok := child.(map[string]any); ok {
						children[name] = toJSONSchema(m, strict)
					}
				}
			}
		case "items", "additionalProperties", "not":
			if m, ok := value.(map[string]any); ok {
				node[key] = toJSONSchema(m, strict)
			}
		case "allOf", "anyOf", "oneOf":
			if list, ok := value.([]any); ok {
				for i, child := range list {
					if m, ok := child.(map[string]any); ok {
						list[i] = toJSONSchema(m, strict)
					}
				}
			}
		}
	}
	makeNullable(node)
	if strict && node["properties"] != nil && node["additionalProperties"] == nil &&
		node["x-kubernetes-preserve-unknown-fields"] != true {
		node["additionalProperties"] = false
	}
	return node
}

// makeNullable lets a typed node also be null: rendered manifests carry nulls such
// as creationTimestamp: null, and the API server accepts them.
func makeNullable(node map[string]any) {
	t, ok := node["type"].(string)
	if !ok {
		return
	}
	node["type"] = []any{t, "null"}
	if enum, ok := node["enum"].([]any); ok {
		node["enum"] = append(enum, nil)
	}
}

func deepCopy(m map[string]any) map[string]any {
	data, _ := json.Marshal(m) // values came from json.Unmarshal: always marshalable
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return out
}

func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Kubeconform runs $BinDir/kubeconform -strict -summary on files against the schemas
// in schemaDir (see WriteKubeconformSchemas) and returns its combined output. A
// validation failure is an error that includes that output.
func Kubeconform(ctx context.Context, schemaDir string, files ...string) ([]byte, error) {
	binDir, err := BinDir()
	if err != nil {
		return nil, err
	}
	args := append([]string{"-strict", "-summary", "-schema-location", schemaDir + "/" + KubeconformSchemaLocation}, files...)
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "kubeconform"), args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubeconform %v: %w\n%s", files, err, out)
	}
	return out, nil
}
