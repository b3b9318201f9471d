//! The loaded models, by name and by the classes they serve: the generators, and the
//! detectors (model directories of `kind = "detector"`). Read-only once built: the router
//! resolves classes here, the generation stage borrows models from here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tch::Device;

use crate::detect::detector::{is_detector_dir, Detector};
use crate::model::{model_dirs, Model, ModelError, Precision};

pub struct ModelRegistry {
    models: BTreeMap<String, Arc<Model>>,
    detectors: BTreeMap<String, Arc<Detector>>,
}

impl ModelRegistry {
    /// Loads every model directory under `root` onto `device`; two models of one name are an error.
    pub fn load(root: &Path, device: Device) -> Result<Self, ModelError> {
        Self::load_in(root, device, None)
    }

    /// As [`ModelRegistry::load`], with every native model in `precision` instead of its own
    /// `model.toml` setting (`None` keeps each model's).
    pub fn load_in(root: &Path, device: Device, precision: Option<Precision>) -> Result<Self, ModelError> {
        let (mut models, mut detectors) = (BTreeMap::new(), BTreeMap::new());
        let twice = |name: &str| ModelError::InvalidSettings {
            field: "name".into(),
            reason: format!("two models under {} are called `{name}`", root.display()),
        };
        for dir in model_dirs(root)? {
            if is_detector_dir(&dir) {
                let detector = Detector::load(&dir)?;
                let name = detector.name().to_string();
                if models.contains_key(&name) || detectors.insert(name.clone(), Arc::new(detector)).is_some() {
                    return Err(twice(&name));
                }
                continue;
            }
            let mut model = Model::load(&dir, device)?;
            if let Some(p) = precision {
                model.set_precision(p);
            }
            let name = model.name().to_string();
            if detectors.contains_key(&name) || models.insert(name.clone(), Arc::new(model)).is_some() {
                return Err(twice(&name));
            }
        }
        if models.is_empty() {
            return Err(ModelError::InvalidSettings {
                field: "models".into(),
                reason: format!("no model directories (with a model.toml) under {}", root.display()),
            });
        }
        Ok(Self { models, detectors })
    }

    pub fn from_models(models: impl IntoIterator<Item = Model>) -> Self {
        let models = models.into_iter().map(|m| (m.name().to_string(), Arc::new(m))).collect();
        Self { models, detectors: BTreeMap::new() }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// The model serving `class`; with several, the first by name.
    pub fn for_class(&self, class: &str) -> Option<&Arc<Model>> {
        self.models.values().find(|m| m.spec.classes.iter().any(|c| c == class))
    }

    /// Every class served, sorted and without repeats.
    pub fn classes(&self) -> Vec<String> {
        let mut c: Vec<String> = self.models.values().flat_map(|m| m.spec.classes.iter().cloned()).collect();
        c.sort();
        c.dedup();
        c
    }

    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    /// The generators.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    pub fn detector(&self, name: &str) -> Option<&Arc<Detector>> {
        self.detectors.get(name)
    }

    /// The detector finding `class`; with several, the first by name.
    pub fn detector_for_class(&self, class: &str) -> Option<&Arc<Detector>> {
        self.detectors.values().find(|d| d.spec.classes.iter().any(|c| c == class))
    }

    pub fn detectors(&self) -> impl Iterator<Item = &Arc<Detector>> {
        self.detectors.values()
    }
}
