// The storage account behind the Functions host (AzureWebJobsStorage) and the
// container that Flex Consumption deploys the app package into. Shared keys are off,
// so every caller, the host included, authenticates with Entra ID.
//
// Roles: the identity gets Storage Blob Data Owner on the account and nothing else.
// - Blob: the host keeps its locks, timer schedule status and keys in containers it
//   creates itself, and reads the deployment package; its docs ask for Owner rather
//   than Contributor. Scoping to the account covers the host's containers and the
//   deployment container with one assignment.
// - No Queue or Table role: the app has a timer and a Cosmos DB trigger only (no blob
//   or queue trigger, no Durable Functions), and the app settings give the host the
//   blob endpoint alone, so it never tries queues or tables.

param name string
param location string
param tags object = {}
param deploymentContainerName string
param identityPrincipalId string

// Storage Blob Data Owner
var blobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without VNet integration reaches its storage over the public endpoint; shared keys are off, so access needs an Entra token and a role.
  // checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35: the app has no private network path to the account.
  // checkov:skip=CKV_AZURE_206: Locally redundant is enough: the account holds host state and a copy of the deployed package, both recreated by azd up.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, blobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwnerRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output deploymentContainerName string = deploymentContainer.name
