package stepline

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// toValue encodes anything encoding/json can marshal (maps, slices, structs with json tags,
// numbers, strings, bools, nil) as a google.protobuf.Value.
func toValue(data any) (*structpb.Value, error) {
	if v, ok := data.(*structpb.Value); ok {
		return v, nil
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("stepline: encode %T as JSON: %w", data, err)
	}
	value := &structpb.Value{}
	if err := protojson.Unmarshal(raw, value); err != nil {
		return nil, fmt.Errorf("stepline: encode %T as JSON: %w", data, err)
	}
	return value, nil
}

// toStruct is toValue for a JSON object; nil stays nil (the field is left unset).
func toStruct(data map[string]any) (*structpb.Struct, error) {
	if data == nil {
		return nil, nil
	}
	value, err := toValue(data)
	if err != nil {
		return nil, err
	}
	return value.GetStructValue(), nil
}

// Decode unmarshals a JSON value from a result, payload or event into out, as
// encoding/json would; an unset value decodes as JSON null.
//
//	var greeting struct{ Message string `json:"message"` }
//	err := stepline.Decode(res.GetResult(), &greeting)
func Decode(value *structpb.Value, out any) error {
	raw := []byte("null")
	if value != nil {
		var err error
		if raw, err = protojson.Marshal(value); err != nil {
			return err
		}
	}
	return json.Unmarshal(raw, out)
}
