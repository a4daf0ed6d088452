//! A model file as an [ONNX](https://onnx.ai) model, which standard runtimes
//! (onnxruntime, and what reads ONNX) run: [`export`].
//!
//! The graph takes the raw features, `x` float `[rows, features]`, and does
//! what [`crate::predict`] does, step for step:
//!
//! - with a scaler: `Cast` to double, `Sub` the means, `Div` by the
//!   deviations, `Cast` back to float (the f64 arithmetic [`crate::import`]
//!   standardized the training rows with);
//! - per layer a `Gemm` (x·W + b, W stored `[in, out]` as in the model file),
//!   `Relu` between layers;
//! - a classifier's outputs: `logits` float `[rows, classes]`, `probabilities`
//!   (`Softmax` on axis 1) and `label` (`ArgMax` on axis 1: int64 `[rows]`,
//!   the class index; `class_names` in the model's metadata names them);
//! - a regression's: `y` float `[rows, 1]`, the target scale applied in double.
//!
//! Opset 13 of the default domain, IR version 7: what every runtime of the
//! last years loads.

pub mod proto;

use prost::Message;

use crate::error::{ComputeError, Result};
use crate::predict::{Model, Task};
use proto::tensor_shape_proto::{Dimension, dimension};
use proto::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

/// The operator set version of the default domain the graph uses.
pub const OPSET: i64 = 13;
/// The IR version written (ONNX 1.8's, the first with opset 13).
pub const IR_VERSION: i64 = 7;
/// The symbolic name of the batch axis.
pub const ROWS: &str = "rows";
/// A protobuf message may not exceed 2 GiB; the weights get all but 1 MiB.
pub const MAX_WEIGHT_BYTES: usize = (1 << 31) - (1 << 20);

/// Converts a model file (safetensors, see [`crate::predict`]) to ONNX bytes.
/// The file is checked as [`Model::from_safetensors`] checks it.
pub fn export(model_bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(encode(&model_proto(&Model::from_safetensors(
        model_bytes,
    )?)?))
}

/// An ONNX model's bytes.
pub fn encode(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

/// A graph input or output as `name type [dims]`, e.g. `logits float [rows, 3]`.
pub fn describe(v: &ValueInfoProto) -> String {
    let Some(TypeProto {
        value: Some(type_proto::Value::TensorType(t)),
        ..
    }) = &v.r#type
    else {
        return v.name.clone();
    };
    let ty = DataType::try_from(t.elem_type).map_or("?", |t| match t {
        DataType::Float => "float",
        DataType::Double => "double",
        DataType::Int64 => "int64",
        _ => "?",
    });
    let dims: Vec<String> = t
        .shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match &d.value {
            Some(dimension::Value::DimValue(n)) => n.to_string(),
            Some(dimension::Value::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect();
    format!("{} {ty} [{}]", v.name, dims.join(", "))
}

/// The ONNX model of a checked model file.
pub fn model_proto(m: &Model) -> Result<ModelProto> {
    let info = &m.info;
    let weight_bytes = m.mlp.params().saturating_mul(4);
    if weight_bytes > MAX_WEIGHT_BYTES {
        return Err(ComputeError::Data(format!(
            "the model's {weight_bytes} bytes of weights exceed what one ONNX file holds \
             ({MAX_WEIGHT_BYTES})"
        )));
    }
    let (features, outputs) = (info.features(), info.outputs());
    let mut g = Graph::default();
    let mut h = "x".to_string();
    if let Some(s) = &info.scaler {
        g.init_f64("standardize_mean", &[features], &s.mean);
        g.init_f64("standardize_std", &[features], &s.std);
        g.cast(&h, "x_f64", DataType::Double);
        g.node("Sub", &["x_f64", "standardize_mean"], "x_centered", vec![]);
        g.node(
            "Div",
            &["x_centered", "standardize_std"],
            "x_scaled",
            vec![],
        );
        g.cast("x_scaled", "x_standardized", DataType::Float);
        h = "x_standardized".into();
    }
    let depth = m.mlp.depth();
    let last = match (info.task, info.target) {
        (Task::Regress, Some(_)) => "o",
        (Task::Regress, None) => "y",
        _ => "logits",
    };
    for l in 0..depth {
        let (i, o) = (m.mlp.layers[l], m.mlp.layers[l + 1]);
        let (w, b) = (format!("w{l}"), format!("b{l}"));
        g.init_f32(&w, &[i, o], &m.mlp.w[l]);
        g.init_f32(&b, &[o], &m.mlp.b[l]);
        if l + 1 == depth {
            g.node("Gemm", &[&h, &w, &b], last, vec![]);
        } else {
            let z = format!("z{l}");
            g.node("Gemm", &[&h, &w, &b], &z, vec![]);
            h = format!("h{}", l + 1);
            g.node("Relu", &[&z], &h, vec![]);
        }
    }
    let mut out = Vec::new();
    let mut meta = vec![
        entry("task", info.task.name()),
        entry(
            "layers",
            &info
                .layers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if let Some(names) = &info.feature_names {
        meta.push(entry("feature_names", &json(names)?));
    }
    match info.task {
        Task::Classify => {
            g.node(
                "Softmax",
                &["logits"],
                "probabilities",
                vec![int("axis", 1)],
            );
            g.node(
                "ArgMax",
                &["logits"],
                "label",
                vec![int("axis", 1), int("keepdims", 0)],
            );
            out.push(value("logits", DataType::Float, &[None, Some(outputs)]));
            out.push(value(
                "probabilities",
                DataType::Float,
                &[None, Some(outputs)],
            ));
            out.push(value("label", DataType::Int64, &[None]));
            meta.push(entry("class_names", &json(&info.class_labels())?));
        }
        Task::Regress => {
            if let Some(t) = info.target {
                g.init_f64("target_scale", &[], &[t.scale]);
                g.init_f64("target_mean", &[], &[t.mean]);
                g.cast("o", "o_f64", DataType::Double);
                g.node("Mul", &["o_f64", "target_scale"], "y_scaled", vec![]);
                g.node("Add", &["y_scaled", "target_mean"], "y_f64", vec![]);
                g.cast("y_f64", "y", DataType::Float);
            }
            out.push(value("y", DataType::Float, &[None, Some(1)]));
        }
    }
    let graph = GraphProto {
        node: g.nodes,
        name: "cloudchain_mlp".into(),
        initializer: g.inits,
        doc_string: doc(m),
        input: vec![value("x", DataType::Float, &[None, Some(features)])],
        output: out,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "cloudchain".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "An MLP trained on CloudChain".into(),
        graph: Some(graph),
        metadata_props: meta,
        ..Default::default()
    })
}

/// What the graph takes and gives, for whoever opens the file.
fn doc(m: &Model) -> String {
    let info = &m.info;
    let mut d = format!(
        "x: {} raw features per row{}{}. ",
        info.features(),
        info.feature_names
            .as_ref()
            .map(|n| format!(" ({})", n.join(", ")))
            .unwrap_or_default(),
        if info.scaler.is_some() {
            ", standardized in the graph"
        } else {
            ""
        }
    );
    d.push_str(match info.task {
        Task::Classify => {
            "logits and probabilities: one per class; label: the index of the most \
             likely class (metadata class_names)."
        }
        Task::Regress => "y: the predicted target.",
    });
    d
}

/// Nodes and initializers, in the order they are added.
#[derive(Debug, Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

impl Graph {
    fn cast(&mut self, input: &str, output: &str, to: DataType) {
        self.node("Cast", &[input], output, vec![int("to", to as i64)]);
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
    }

    fn init_f32(&mut self, name: &str, dims: &[usize], v: &[f32]) {
        self.init(
            name,
            dims,
            DataType::Float,
            v.iter().flat_map(|x| x.to_le_bytes()),
        );
    }

    fn init_f64(&mut self, name: &str, dims: &[usize], v: &[f64]) {
        self.init(
            name,
            dims,
            DataType::Double,
            v.iter().flat_map(|x| x.to_le_bytes()),
        );
    }

    fn init(&mut self, name: &str, dims: &[usize], t: DataType, raw: impl Iterator<Item = u8>) {
        self.inits.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: t as i32,
            name: name.into(),
            raw_data: raw.collect(),
            ..Default::default()
        });
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: Some(i),
        ..Default::default()
    }
}

/// A tensor's type and shape; `None` is the symbolic [`ROWS`] axis.
fn value(name: &str, t: DataType, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(*n as i64),
                None => dimension::Value::DimParam(ROWS.into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: t as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

fn json(v: &[String]) -> Result<String> {
    serde_json::to_string(v).map_err(|e| ComputeError::Data(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::Mlp;
    use crate::predict::testing::model_file;
    use crate::tensors::Writer;

    #[test]
    fn an_exported_classifier_decodes_to_the_graph_it_should_be() {
        let file = model_file(
            &[4, 8, 3],
            &[
                ("feature_names", r#"["a","b","c","d"]"#),
                ("class_names", r#"["x","y","z"]"#),
                ("standardize_mean", "[1,2,3,4]"),
                ("standardize_std", "[1,1,2,2]"),
            ],
        );
        let m = ModelProto::decode(export(&file).unwrap().as_slice()).unwrap();
        assert_eq!((m.ir_version, m.producer_name.as_str()), (7, "cloudchain"));
        assert_eq!(
            m.opset_import,
            [OperatorSetIdProto {
                domain: "".into(),
                version: 13
            }]
        );
        let g = m.graph.unwrap();
        let io = |v: &[ValueInfoProto]| v.iter().map(describe).collect::<Vec<_>>();
        assert_eq!(io(&g.input), ["x float [rows, 4]"]);
        assert_eq!(
            io(&g.output),
            [
                "logits float [rows, 3]",
                "probabilities float [rows, 3]",
                "label int64 [rows]"
            ]
        );
        let inits: Vec<(&str, i32, &[i64], usize)> = g
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t.data_type, &t.dims[..], t.raw_data.len()))
            .collect();
        assert_eq!(
            inits,
            [
                ("standardize_mean", 11, &[4][..], 32),
                ("standardize_std", 11, &[4][..], 32),
                ("w0", 1, &[4, 8][..], 128),
                ("b0", 1, &[8][..], 32),
                ("w1", 1, &[8, 3][..], 96),
                ("b1", 1, &[3][..], 12),
            ]
        );
        let w1: Vec<f32> = g.initializer[4]
            .raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(w1, Mlp::init(&[4, 8, 3], 1).unwrap().w[1]);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "Cast", "Sub", "Div", "Cast", "Gemm", "Relu", "Gemm", "Softmax", "ArgMax"
            ]
        );
        // keepdims = 0 is written, not left to a default.
        let argmax = &g.node[8];
        assert_eq!(argmax.attribute[1].name, "keepdims");
        assert_eq!(argmax.attribute[1].i, Some(0));
        let meta: Vec<(&str, &str)> = m
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            meta,
            [
                ("task", "classify"),
                ("layers", "4,8,3"),
                ("feature_names", r#"["a","b","c","d"]"#),
                ("class_names", r#"["x","y","z"]"#),
            ]
        );
    }

    #[test]
    fn an_exported_regression_outputs_y_scaled_back() {
        let file = model_file(
            &[2, 1],
            &[
                ("task", "regress"),
                ("target_mean", "5"),
                ("target_scale", "2"),
            ],
        );
        let g = ModelProto::decode(export(&file).unwrap().as_slice())
            .unwrap()
            .graph
            .unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Gemm", "Cast", "Mul", "Add", "Cast"]);
        let outputs: Vec<String> = g.output.iter().map(describe).collect();
        assert_eq!(outputs, ["y float [rows, 1]"]);
        let t = &g.initializer[2];
        assert_eq!((t.name.as_str(), t.dims.len()), ("target_scale", 0));
        assert_eq!(t.raw_data, 2f64.to_le_bytes());
        // Without a target scale the last layer's output is y itself.
        let plain = model_file(&[2, 3, 1], &[("task", "regress")]);
        let g = ModelProto::decode(export(&plain).unwrap().as_slice())
            .unwrap()
            .graph
            .unwrap();
        assert_eq!(g.node.last().unwrap().output, ["y"]);
    }

    #[test]
    fn a_bad_model_file_is_an_error_not_a_panic() {
        let good = model_file(&[3, 4, 2], &[]);
        assert!(export(&good).is_ok());
        let e = export(b"not a model").unwrap_err().to_string();
        assert!(e.contains("safetensors"), "{e}");
        let e = export(&Writer::new().f32("x", &[1], &[1.0]).to_bytes().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing tensor `w0`"), "{e}");
        let mismatched = Writer::new()
            .f32("w0", &[2, 3], &[0.0; 6])
            .f32("b0", &[3], &[0.0; 3])
            .f32("w1", &[4, 1], &[0.0; 4])
            .f32("b1", &[1], &[0.0])
            .to_bytes()
            .unwrap();
        let e = export(&mismatched).unwrap_err().to_string();
        assert!(e.contains("w1 takes 4 inputs"), "{e}");
        let nan = Writer::new()
            .f32("w0", &[1, 1], &[f32::NAN])
            .f32("b0", &[1], &[0.0])
            .to_bytes()
            .unwrap();
        let e = export(&nan).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
        let e = export(&model_file(&[2, 2], &[("standardize_std", "[1,1]")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("without the other"), "{e}");
        // Every truncation of a good file: an error (or, at full length, the model).
        for n in 0..good.len() {
            assert!(export(&good[..n]).is_err());
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes, or a model file with some bytes changed, export or
            /// are refused; they never panic.
            #[test]
            fn any_bytes_export_or_are_refused(
                noise in proptest::collection::vec(any::<u8>(), 0..256),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            ) {
                let _ = export(&noise);
                let mut file = model_file(&[2, 3, 2], &[("class_names", r#"["a","b"]"#)]);
                for (at, b) in flips {
                    let n = file.len();
                    file[at % n] ^= b;
                }
                let _ = export(&file);
            }
        }
    }
}
